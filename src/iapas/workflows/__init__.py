"""Procedures shared by the command line, the station and Python users (calibrate, segment, demo),
and the table of the options they share (:mod:`iapas.workflows.options`)."""
