// Original file: cri-api/api.proto


export interface CheckpointPodResponse {
}

export interface CheckpointPodResponse__Output {
}
