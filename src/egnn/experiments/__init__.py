"""The paper's experiments (N-body, graph autoencoder, QM9), built on the model library."""
