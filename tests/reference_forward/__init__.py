"""Independent numpy forward passes that graph builders are checked against."""
