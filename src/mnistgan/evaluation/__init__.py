"""Scores: the MNIST classifiers whose features are the yardstick, the metrics, their intervals, the
scoring core, the FID monitor of training, and the `mnistgan score` command.

Imports mnistgan.gan (to sample a generator) and the shared base; never mnistgan.lab.
"""
