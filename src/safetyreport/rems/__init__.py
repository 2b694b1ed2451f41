"""The SPRAVATO REMS Patient Monitoring Form of each esketamine treatment session."""
