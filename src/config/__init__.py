"""A run's configuration: one typed value built from the flags, paper mode and resume (run_config), and the
command line that fills it (run_flags)."""
