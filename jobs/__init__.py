"""The example jobs, installed as horn.jobfiles (``horn jobs`` lists them; ``horn run NAME`` runs one)."""
