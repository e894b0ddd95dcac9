"""A run's final.json record as the run loop writes it, with made-up numbers."""


def final_record(arch, dataset, strategy, budget, seed, acc, **kw):
  rec = {"epoch": 10, "test_accuracy": acc, "units": 1000, "weight_sparsity": 0.9,
         "activation_sparsity": 0.95, "flops_saved": 0.97, "wall_s": 1.0, "compilations": 1,
         "pretrained": True, "data": "offline CIFAR-10 copy", "arch": arch, "dataset": dataset,
         "budget": budget, "seed": seed, "strategy": strategy}
  rec.update(kw)
  return rec
