"""Backbones (ResNet-18/50, AlexNet with torchvision's keys), heads and the five methods' networks."""
from .backbones import AlexNet, ResNet, alexnet, load_pretrained, resnet18, resnet50, resnet_tiny
from .heads import CSBN, CosineClassifier, GeM, NetworkD, NonLocal, StripeHead
from .networks import METHODS, ModalityResNet, build_model

__all__ = ["AlexNet", "CSBN", "CosineClassifier", "GeM", "METHODS", "ModalityResNet", "NetworkD", "NonLocal", "ResNet",
           "StripeHead", "alexnet", "build_model", "load_pretrained", "resnet18", "resnet50", "resnet_tiny"]
