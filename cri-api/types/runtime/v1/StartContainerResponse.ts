// Original file: cri-api/api.proto


export interface StartContainerResponse {
}

export interface StartContainerResponse__Output {
}
