"""The ground floor: plain types and rules that import nothing else of iapas."""
