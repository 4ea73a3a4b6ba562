"""Data sources and the prepare stage. Every source yields `Record`s; prepare splits and writes them."""
