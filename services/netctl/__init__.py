"""The network controller service: OpenFlow programming of Open vSwitch for tenant isolation."""
