"""The web console for care teams and on-call engineers, served by the alerting service."""
