"""Prescriptions at the pharmacy: the MedicationRequest lifecycle and repeat dispensing."""
