"""The GAN: models, losses, the training step and loop, checkpoints, sampling and the saved generator.

Imports the shared base (mnistgan.config, io, tensors, runtime, data, pictures, ...) and nothing from
mnistgan.evaluation or mnistgan.lab: a trained generator needs no scoring network.
"""
