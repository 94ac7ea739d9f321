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
