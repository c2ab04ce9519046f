"""Test-suite support code (not shipped): process supervisors and helpers the fixtures share."""
