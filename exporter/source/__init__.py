"""Reading the application's workflow tables (the source contract)."""
