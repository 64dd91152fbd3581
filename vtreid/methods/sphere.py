"""SphereReID (Fan et al.): the Sphere loss on network-D embeddings (METHODS.md section 1).

    L = -(1/N) sum_i log softmax(s cos(theta_{i,c}))_{y_i},  x_i and every w_c L2-normalised, s = 14  (eq. 6)

One shared ResNet-50, network-D head (dropout 0.25, section 4.3's final network), P = 16 x K = 4
identity-balanced batches (K split over the modalities), Adam (beta2 0.99), warm-up 5e-5 -> 1e-3 over
20 epochs, 1e-4 at 80, 1e-5 at 100, 140 epochs; resize 288 x 144 and random-crop 256 x 128, no flip.
"""
from __future__ import annotations

from vtreid import ops
from vtreid.data import PKSampler

from .base import Method, unwrap


class Sphere(Method):
    name = network = "sphere"
    variants = {
        "dropout_0.5": {"model": {"dropout": 0.5}},     # the paper's earlier network-D setting
        "flip": {"input": {"flip": True}},
    }

    def sampler(self, records, *, seed, rank=0, world_size=1):
        s = self.cfg["sampler"]
        return PKSampler(records, self.per_rank(s["identities"], "identities", world_size), s["instances"], seed=seed,
                         rank=rank, world_size=world_size)

    def objective(self, model, batch):
        embedding = model(batch.visible, batch.infrared)["embedding"]
        classifier = unwrap(model).classifier
        return {"id": ops.normalized_cross_entropy(embedding, classifier.weight, batch.labels, scale=classifier.scale)}
