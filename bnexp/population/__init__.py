"""K learning rates of one variant trained as one model, derived from core's net, not a copy of it.

net.py (PopulationNet: DeepConvNet packed K times), optim.py (Adam/SGD with one lr per member), module.py
(the LightningModule), train.py (train_population: bnexp.core.train.train for K members at once).
"""
