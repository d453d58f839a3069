"""Prescription PDFs (WeasyPrint), QR codes and the signed links they encode."""
