"""hasupd: a process supervisor for Linux hosts."""

__version__ = "0.1.0"
