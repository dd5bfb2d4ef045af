"""Datasets: ImageNet-style folders with the five OOD sets, and the embedded mini world."""
