"""GetActivations' domain: latent activations of many inputs at any split point, streamed in
bounded chunks, and the classification head run on (possibly edited) activations. No gRPC here."""
