"""workflow-analytics: analytics, metrics and exports for multi-step automation workflows."""

__version__ = "0.1.0"
