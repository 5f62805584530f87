"""Format-neutral pipeline: sites, observers and counts, the batch loop, statistics, rules, evidence, gradients."""
