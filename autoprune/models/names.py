"""The zoo's model names, importable without torch: a config naming an unknown model fails in well under
a second, before any heavy import."""

__all__ = ["MODEL_NAMES"]

MODEL_NAMES: tuple[str, ...] = ("resnet20", "resnet56", "vgg11", "vgg16", "mobilenetv2", "cnn1d", "mlp", "vit")
