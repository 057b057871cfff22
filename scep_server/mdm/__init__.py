"""Device lifecycle that follows an MDM's own device records (Jamf Pro, Microsoft Intune / Entra ID)."""
