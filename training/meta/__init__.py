"""Meta-learned personalisation (LiMAML): a MAML-trained sub-network adapted per member into a meta embedding.

subnetwork.py  the meta block (shared body + personalised head) and the embedding <-> parameter mapping
tasks.py       members as tasks: capped, seeded support/query sets as padded index matrices
adapt.py       the inner loop, vmapped over members; meta embeddings for the daily refresh
maml.py        meta-training (first- and second-order MAML) with torch.func
evaluate.py    per-member AUC of adapted vs meta-init vs random-init, by history bucket
frames.py      pandas event frames -> Interactions (pandas imported lazily)
state.py       safetensors save/load of the meta-initialisation
config.py      MetaConfig, saved with every state
"""
