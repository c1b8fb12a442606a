"""memdistill: turn an agent's memory into a cartridge training dataset by context distillation."""

__version__ = "0.1.0"
