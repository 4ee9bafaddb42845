"""Benchmarks: each module measures one thing and returns figures for one Markdown table."""
