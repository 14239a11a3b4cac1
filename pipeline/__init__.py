"""pipeline: PowerOffice Go ⇄ Ongoing WMS, through an append-only event log."""

__version__ = "0.1.0"
