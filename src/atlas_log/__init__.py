"""atlas-log-exporter: ship the MongoDB Atlas activity feed to S3 or a local folder, exactly once."""

__version__ = "0.1.0"
