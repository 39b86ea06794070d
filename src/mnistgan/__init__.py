"""mnistgan: reproducible GAN experiments on MNIST.

The core (config, models, losses, train, sample, classifier, metrics) needs only torch, numpy and scipy;
mlflow is imported only by mnistgan.tracking and the stage scripts.
"""

__version__ = "0.1.0"
