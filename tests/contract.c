/* contract.c — placeholder. */
