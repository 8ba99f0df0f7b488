"""Performance reports: the machine's measured roofline and each kernel's place under it."""
