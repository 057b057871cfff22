"""Dynamic (one-time, NDES/Jamf compatible) and delegated (Intune, webhook) SCEP challenges, and the
administration of pending enrolments."""
