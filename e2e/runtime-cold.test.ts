// The core runtime suite again with cold-booted pod VMs (templates off): a pod behaves the same
// whether its VM was cloned from a template or booted from the kernel.
process.env.PODVISOR_TEMPLATES = '0';
require('./runtime.test');
