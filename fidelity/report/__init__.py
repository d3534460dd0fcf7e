"""Writing results: report.json/report.csv, layer dumps, the terminal table, HTML."""
