"""sdzoo model families, one file each; importing this registers them with timm."""
from .resnet_cifar import CifarBasicBlock, CifarResNet
from .resnet import SDBasicBlock, SDBottleneck, SDResNet
from .vision_transformer import SDBlock, SDVisionTransformer
from ._builder import SDModelMixin, sd_model_class
