"""summary_service: STOP RUN stores the phone's overview; the dashboard reads it at once."""
