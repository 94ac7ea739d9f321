{{/*
ADDRESS:PORT from (list ADDRESS PORT), an IPv6 address in brackets.
*/}}
{{- define "svclb.hostPort" -}}
{{- $address := index . 0 | toString -}}
{{- $port := index . 1 | int64 -}}
{{- if contains ":" $address -}}[{{ $address }}]:{{ $port }}{{- else -}}{{ $address }}:{{ $port }}{{- end -}}
{{- end -}}

{{/*
Where the kubelet reaches a server bound to ADDRESS on the node: loopback for an unspecified
address (every address of the node), else the address itself.
*/}}
{{- define "svclb.probeHost" -}}
{{- $address := . | toString -}}
{{- if or (eq $address "0.0.0.0") (eq $address "::") -}}127.0.0.1{{- else -}}{{ $address }}{{- end -}}
{{- end -}}

{{/*
The agent's memory limit when resources.limits.memory is not set (docs/operations.md,
"Memory"): its maps, which the kernel charges to its memory cgroup, at the bytes per entry
the kernel charges each (the preallocated maps by their capacity; the per-frontend counters,
not preallocated, by the frontends programmed, per CPU; each Maglev table by its size), and
the agent's own memory.
*/}}
{{- define "svclb.memoryLimit" -}}
{{- $m := .Values.mapSizes -}}
{{- $s := .Values.memorySizing -}}
{{- $services := $m.services | default 65536 | int64 -}}
{{- $backends := $m.backends | default 65536 | int64 -}}
{{- $slots := $m.slots | default 262144 | int64 -}}
{{- $conntrack := $m.conntrack | default 262144 | int64 -}}
{{- $frontends := $s.frontends | int64 -}}
{{- /* services, backends, slots, conntrack; the counters' buckets (2 maps of 2x services) */ -}}
{{- $sized := add (mul 112 $services) (mul 96 $backends) (mul 80 $slots) (mul 168 $conntrack) (mul 64 $services) -}}
{{- /* socket reverse 262144, affinity 65536, fragments 8192, Maglev outer 16384, answer rates 65536 */ -}}
{{- $fixed := add (mul 136 262144) (mul 104 65536) (mul 152 8192) (mul 80 16384) (mul 88 65536) -}}
{{- $counters := mul $frontends (add 176 (mul 56 ($s.cpus | int64))) -}}
{{- $tables := mul ($s.maglevFrontends | int64) 4 (.Values.maglev.tableSize | int64) -}}
{{- $agent := add 50331648 (mul 10240 $frontends) -}}
{{- printf "%dMi" (add (div (add $sized $fixed $counters $tables $agent) 1048576) 1) -}}
{{- end -}}
