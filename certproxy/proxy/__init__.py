"""The running program: configuration, TLS, listeners, the proxy handler, the CLI."""
