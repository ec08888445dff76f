"""Tests of the engines and the graphs they run."""
