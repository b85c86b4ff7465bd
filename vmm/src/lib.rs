//! The ftvm VMM: a single-vCPU KVM VM whose every input from the world arrives at a VM exit.
