// Original file: cri-api/api.proto


export interface StopContainerResponse {
}

export interface StopContainerResponse__Output {
}
