"""The running program: configuration, wiring, reload, health, the plain and
admin listeners' answers, auth, metrics and logs. Builds on the data plane
(``proxy``), the ACME client and the store; the command line sits above it."""
