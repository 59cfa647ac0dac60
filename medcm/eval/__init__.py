"""The evaluation room: retrieval metrics (recall@k by case), draft metrics (BLEU, ROUGE-L, METEOR),
the baselines and oracle a draft is measured against, and `medcm eval` on a manifest split."""
