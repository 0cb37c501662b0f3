"""Benchmarks (registry + user TOML files), few-shot splits and image folders for stage one.

    bench = load_benchmark("imagenet100", data_root="/data")   # or load_benchmark("my.toml")
    plan = plan_train(bench, shots=16, seed=1)                 # rows of split train_shots16_seed1
"""
from .benchmarks import (Benchmark, Folder, known_benchmarks, load_benchmark, load_toml_benchmark,
                         register_benchmark, resolve_data_root)
from .folders import IMAGE_EXTENSIONS, ImageRows, list_images
from .splits import SplitPlan, few_shot, plan_ood, plan_test, plan_train

__all__ = ["Benchmark", "Folder", "known_benchmarks", "load_benchmark", "load_toml_benchmark",
           "register_benchmark", "resolve_data_root", "IMAGE_EXTENSIONS", "ImageRows", "list_images",
           "SplitPlan", "few_shot", "plan_ood", "plan_test", "plan_train"]
