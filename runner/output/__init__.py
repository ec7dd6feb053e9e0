"""What goes out besides stdout: the log, metrics and the webhook."""
