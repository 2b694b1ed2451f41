"""safetyreport: safety-event reporting for ketamine and esketamine clinics."""

__version__ = "0.1.0"
