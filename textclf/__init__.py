"""textclf: the model code shared by training (train/) and serving (handlers/), shipped inside every .mar.

Import what you need from its modules (textclf.predict.Predictor, textclf.checkpoint, ...): this
package file imports nothing, so reading data or validating requests does not load torch.
"""
